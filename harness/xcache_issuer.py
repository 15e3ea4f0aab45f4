"""A token issuer's public side, as XCache's SciTokens plugin reads it over HTTPS: the OpenID
discovery document and the signing keys (JWKS). Run by the XCache tests as a process of its
own, inside their network namespace; the tests sign the tokens with the private key.

usage: python -m harness.xcache_issuer --issuer URL --port N --cert PEM --key PEM
       --jwks FILE

Prints "ready" once it listens, then one line per request ("GET /path").
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--jwks", type=Path, required=True)
    args = parser.parse_args(argv)
    documents = {
        "/.well-known/openid-configuration": {
            "issuer": args.issuer,
            "jwks_uri": f"{args.issuer}/jwks",
            "token_endpoint": f"{args.issuer}/token",
        },
        "/jwks": json.loads(args.jwks.read_text()),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            print(f"GET {self.path}", flush=True)
            document = documents.get(self.path)
            if document is None:
                self.send_error(404)
                return
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per request is printed above

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
