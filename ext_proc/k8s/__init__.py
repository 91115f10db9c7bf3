"""Tollway in Kubernetes: the injected sidecar, transparent interception, and the mesh.

Theory of operation. A workload that calls a model gets Tollway the way mesh sidecars arrive:
a mutating admission webhook (:mod:`ext_proc.k8s.inject`, ``tollway inject``) patches every pod
of a namespace (or a workload) that opted in by label. The patch adds, before the pod's own
containers, three containers from Tollway's one image:

``tollway-init`` (an init container, root with NET_ADMIN/NET_RAW only)
    Runs ``tollway-intercept`` (``k8s/image/tollway-intercept``), which redirects the pod's
    outbound TCP to the providers' port 443 into Envoy's TLS listener, except Envoy's own
    (iptables ``OUTPUT`` nat, matched by Envoy's user). Then it exits.
``tollway`` (a native sidecar: an init container with ``restartPolicy: Always``)
    ``tollway serve`` on the private Unix socket ``/run/tollway/ext_proc.sock``, writing Envoy's
    clusters file next to it; the policy from a ConfigMap (hot-reloaded through the kubelet's
    ``..data`` symlink swap), provider keys from a Secret, Redis from a URL in a Secret, and the
    pod's identity, ``spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT``, computed by the
    injector from what the API server admitted (never from anything the pod says about itself).
``tollway-envoy`` (a native sidecar, started once Tollway is ready)
    Envoy with the bootstrap :func:`ext_proc.k8s.sidecar.bootstrap` renders: Tollway's usual
    base-URL listener (``127.0.0.1:10000``), the interception listener, and a pod listener that
    shows kubelet and Prometheus only health and metrics.

The interception listener matches the TLS SNI of the provider hosts, presents a certificate
for them issued by a cluster CA (cert-manager; the CA is name-constrained to those hosts, and
trust-manager puts it, with the public roots, into every namespace), runs the same ext_proc
chain as the base-URL listener, and originates TLS to the real provider. A connection whose SNI
is another host (the providers' addresses are shared by other sites behind the same CDN) or
that has none is passed through untouched to where it was going. The application keeps
``https://api.openai.com/v1`` and its SDK.

The mesh-wide alternative (``k8s/overlays/istio``) runs Tollway once, as a shared Deployment
that every Istio sidecar reaches over mutual TLS with its own workload certificate: Tollway
names the calling workload by that certificate's SPIFFE ID (:func:`ext_proc.server.listen.spiffe_id`).
"""
