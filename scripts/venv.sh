# Sourced by scripts/start, scripts/test and scripts/test-latest: make a virtualenv and
# install the project into it.
#   locked_venv DIR LOCKFILE   exactly the pinned, hash-checked versions of LOCKFILE
#   latest_venv DIR EXTRAS     the newest releases that pyproject.toml's ranges admit
# The project itself is installed editable (-e), built with the setuptools of the lock.

_make_venv() {
  local dir=$1
  if [ ! -x "$dir/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$dir"
  fi
}

locked_venv() {
  local dir=$1 lock=$2
  _make_venv "$dir"
  # --require-hashes: every file must match the hash the lock recorded for it.
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r "$lock"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
}

latest_venv() {
  local dir=$1 extras=$2
  rm -rf "$dir"
  _make_venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade --upgrade-strategy eager -e ".$extras"
}
