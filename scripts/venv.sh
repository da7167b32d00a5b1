# Sourced by scripts/start, scripts/test and scripts/test-latest: make a virtualenv and
# install the project into it.
#   locked_venv DIR LOCKFILE   exactly the pinned, hash-checked versions of LOCKFILE
#   latest_venv DIR EXTRAS     the newest releases that pyproject.toml's ranges admit
#   lowest_venv DIR            the oldest releases they admit (the lower bounds), test tools included
#   tools_uv                   uv, pinned, in .venv-tools (it resolves the locks)
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

UV_VERSION=0.13.9

tools_uv() {
  if [ ! -x .venv-tools/bin/uv ] || [ "$(.venv-tools/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    "${PYTHON:-python3}" -m venv .venv-tools
    .venv-tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  fi
}

lowest_venv() {
  local dir=$1
  tools_uv
  rm -rf "$dir"
  _make_venv "$dir"
  # lowest-direct: each dependency pyproject.toml names at its lower bound, unless another
  # dependency needs more (then that need is the honest lower bound: raise the range).
  .venv-tools/bin/uv pip compile --quiet --python-version 3.11 --resolution lowest-direct \
    pyproject.toml requirements/build.in --extra test -o "$dir/lowest.txt"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$dir/lowest.txt"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
}
