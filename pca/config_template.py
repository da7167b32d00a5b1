"""The ``pca.toml`` that ``pca init`` writes: every setting with its default, commented."""

from __future__ import annotations

from pca.config import listen_from_url


def render_config(
    *,
    public_url: str,
    admin_listen: str,
    key_algorithm: str,
    default_issuer: str = "issuing-ca",
    database_url: str = "",
    admin_tls: bool = True,
    admin_url: str = "",
) -> str:
    """The pca.toml written by ``pca init``: every setting with its default, commented."""
    host, port = listen_from_url(public_url)
    url_line = f'url = "{admin_url}"' if admin_url else '# url = "https://HOST:PORT"'
    return f"""# pca configuration. Relative paths are relative to this file's directory.

[paths]
data_dir = "."
database = "pca.db"          # SQLite event log, projection and OCSP response store
crl_dir = "crl"              # directory object store for CRLs

[database]
url = "{database_url}"  # postgresql://user@host:port/db for the scaled shape; empty: SQLite (paths.database).
# No password here: use PGPASSWORD or ~/.pgpass, or give the whole URL in PCA_DATABASE_URL.

[scale]
lease_seconds = 10           # a pre-signer or publisher that stops renewing its lease is replaced after this
heartbeat_seconds = 1        # responders report their applied position this often
responder_gone_seconds = 30  # a responder silent this long is marked gone (no longer holds propagation open)
slo_seconds = 5              # OCSP propagation SLO: revocation committed -> answered by every live responder

[public]
url = "{public_url}"      # base of the OCSP URL (AIA) and CRL URLs put into certificates
listen = "{host}:{port}"
server = "granian"           # granian: worker processes of their own (the fast shape); uvicorn: in pca serve itself
workers = 0                  # granian worker processes; 0: one per core, less one beside the API and signers

[admin]
listen = "{admin_listen}"
token_file = "admin.token"   # the bearer token the CLI sends (mode 0600)
tokens_file = "tokens.json"  # hashes of the tokens the admin API accepts, with roles
max_body_bytes = 65536
{url_line}  # where the CLI finds the API (default: https:// + listen); its host goes into the certificate
tls = {"true" if admin_tls else "false"}  # false: plain HTTP (refused on a non-loopback listen)
tls_cert = ""                # your own certificate and key (PEM); empty: pca issues keys/admin-tls.pem and renews it
tls_key = ""
tls_validity_days = 30       # of the certificate pca issues
tls_renew_before_days = 10   # the running server re-issues it this long before it expires
ca_file = "ca-chain.pem"     # the CLI verifies the admin API's certificate against this bundle
client_ca = ""               # a CA bundle: accept client certificates issued under it (role from the subject's OU)

[ca]
default_issuer = "{default_issuer}"
leaf_validity_days = 90
key_algorithm = "{key_algorithm}"  # ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096

[ocsp]
validity_seconds = 86400     # nextUpdate - thisUpdate of pre-signed responses
refresh_fraction = 0.5       # re-sign when this fraction of the validity has passed
signer_validity_days = 30    # delegated OCSP signer certificates
signer_renew_before_days = 10
signer_warn_days = 14        # warn (metric, /healthz, log) this many days before an issuer's OCSP signer expires
cache_size = 1000000         # responses held in each responder's memory
workers = 0                  # pre-signing processes (0 = one per core)
poll_interval = 0.05         # seconds between polls of the change feed (SQLite; on PostgreSQL, which notifies, 0.2)

[audit]
checkpoint_every_events = 1000    # the publisher signs a checkpoint of the log's head after this many events
checkpoint_interval_seconds = 300 # or this long after the last one, when the log has moved

[crl]
validity_seconds = 86400     # nextUpdate - thisUpdate
interval_seconds = 21600     # publish a full CRL at least this often
delta_interval_seconds = 300 # and a delta CRL at least this often (0: no delta CRLs)
after_revocation_seconds = 2 # and the changed shards' CRLs this soon after a revocation (debounced)
full_after_revocation = true # a revocation triggers a full CRL of its shard too (nginx, HAProxy, Java read only those)
shards = 1                   # CRL shards per issuing CA; raising it later never moves old certificates
expired_grace_seconds = 0    # entries leave the CRL this long after the certificate's notAfter
base_url = ""                # CRL URL prefix in certificates; empty: public.url + "/crl"

[crl.store]
type = "directory"           # "directory" (paths.crl_dir, served on the public listener) or "s3"
# For S3 (credentials from the standard AWS chain: environment, ~/.aws, instance role):
# bucket = "my-crls"
# prefix = ""                # prepended to object keys, e.g. "crl/"
# endpoint_url = ""          # empty: AWS; or MinIO, Ceph RGW, any S3-compatible endpoint
# region = ""
# addressing_style = "auto"  # auto, path or virtual
# profile = ""               # an AWS profile name

[limits]                     # what one client may hold on a listener (admin and public)
header_line_bytes = 8192     # request line or one header line; longer: 431
header_bytes = 32768         # a request's whole head; more: 431
header_timeout_seconds = 10  # a head must arrive this soon after its first byte, else 408
body_timeout_seconds = 10    # and its body this soon after the head, else 408
idle_timeout_seconds = 5     # a connection with no request under way is closed after this
public_connections = 0       # open connections per public listener process (0: from the open-files limit)
admin_connections = 0        # open connections of the admin listener (0: from the open-files limit)
"""
