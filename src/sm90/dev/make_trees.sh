#!/bin/bash
# Source trees for run_ab_trees.sh, on this machine (before the device call):
# each NAME=REV becomes .devcarry/NAME, the files a build needs at git
# revision REV (a branch, tag or commit). Pass `carry [".devcarry"]` to the
# device call. Example:
#   bash src/sm90/dev/make_trees.sh base=main fs=next/dq-first-store
#   (device) bash src/sm90/dev/run_ab_trees.sh $OUT/ab base=.devcarry/base fs=.devcarry/fs -- ...
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: make_trees.sh NAME=REV..." >&2; exit 2; }
for spec in "$@"; do
  [[ "$spec" == *=* ]] || { echo "make_trees: expected NAME=REV, got '$spec'" >&2; exit 2; }
  name=${spec%%=*}; rev=${spec#*=}
  git rev-parse --verify -q "$rev^{commit}" > /dev/null || { echo "make_trees: unknown revision '$rev'" >&2; exit 2; }
  rm -rf ".devcarry/$name"; mkdir -p ".devcarry/$name"
  git archive "$rev" CMakeLists.txt cmake include src tools python pyproject.toml tests | tar -x -C ".devcarry/$name"
  echo "$name: $(git rev-parse --short "$rev") ($rev)"
done
du -sh .devcarry | cut -f1
