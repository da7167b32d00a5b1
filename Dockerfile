# pca in a container: the versions of requirements/runtime.lock, hash-checked, nothing else.
#   docker build -t pca .
#   docker run --rm -v pca-data:/var/lib/pca pca init --dir /var/lib/pca --public-url http://HOST:8080 --admin-listen 0.0.0.0:8081 --admin-url https://HOST:8081
#   docker run -d -v pca-data:/var/lib/pca -p 8080:8080 -p 8081:8081 pca          # every role (the default CMD)
#   docker run -d ... pca serve --config /var/lib/pca/pca.toml --roles responder --server granian --workers 2
# Secrets (PCA_HSM_PIN, PGPASSWORD, ...) go in with --env-file, never into the image.
# Not built where this file was written (no container daemon there): see docs/deployment.md.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/pca/venv
COPY requirements/runtime.lock requirements/runtime.lock
# Exactly the pinned versions, every file checked against the hash the lock recorded (setuptools, the
# build backend, included): a release made after the lock changes nothing.
RUN /opt/pca/venv/bin/pip install --require-hashes --no-deps -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY revocation revocation
COPY responders responders
COPY publishers publishers
COPY pca pca
RUN /opt/pca/venv/bin/pip install --no-deps --no-build-isolation . && /opt/pca/venv/bin/pca --version

FROM python:3.11-slim-bookworm
# openssl for operators inside the container; libsofthsm2 or a vendor's PKCS#11 module go in a derived image.
RUN apt-get update && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/pca --shell /usr/sbin/nologin pca \
    && install -d -o pca -g pca -m 0700 /var/lib/pca
COPY --from=build /opt/pca/venv /opt/pca/venv
ENV PATH=/opt/pca/venv/bin:$PATH PYTHONUNBUFFERED=1
USER pca
WORKDIR /var/lib/pca
VOLUME /var/lib/pca
EXPOSE 8080 8081
ENTRYPOINT ["pca"]
# Inside a container the listeners bind every address, whatever pca.toml says (its URLs name the host).
CMD ["serve", "--config", "/var/lib/pca/pca.toml", "--public-listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:8081"]
