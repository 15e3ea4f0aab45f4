// Package gitopscrds pins the Flux API modules whose CRDs ci/gitops-crds generates.
package gitopscrds

import (
	_ "github.com/fluxcd/helm-controller/api/v2"
	_ "github.com/fluxcd/kustomize-controller/api/v1"
	_ "github.com/fluxcd/source-controller/api/v1"
)
