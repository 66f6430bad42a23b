#!/usr/bin/env bash
# Run the Triton kernels' tests against another Triton release (the GPU machines have 3.6, CI has 3.8):
#   bash scripts/check_triton.sh 3.6.0
# installs that Triton (and a numpy its interpreter works with: 3.6's breaks on numpy 2.4) into a side folder
# placed first on PYTHONPATH, then runs the interpreter tests and the sm_80/sm_90 compile checks of the kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:?usage: scripts/check_triton.sh TRITON_VERSION}"
side=".triton-${version}"
if [ ! -d "$side" ]; then
    .venv/bin/pip install -q --no-deps --target "$side" "triton==${version}" "numpy<2.4"
fi
export PYTHONPATH="$PWD/$side${PYTHONPATH:+:$PYTHONPATH}"
.venv/bin/python -c "import triton; assert triton.__version__ == '${version}', triton.__version__"
tests=(tests/kernels tests/search/executors/test_dispatch.py tests/search/executors/test_choice.py)
pytest=(.venv/bin/python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning)
"${pytest[@]}" "${tests[@]}" -m "not slow"
"${pytest[@]}" "${tests[@]}" -m slow -k compile
