"""The hub image's configuration file: all of it comes from the chart's values, via hub_config."""

import sys

from hub_config.config import load_config
from hub_config.facility import ConfigError

c = get_config()  # noqa: F821 - JupyterHub defines get_config for the file it loads

try:
    load_config(c)
except ConfigError as error:
    # The admin reads this in the hub's log: the value at fault and the fix, not a traceback.
    sys.exit(f"facility configuration error: {error}")
