# Sourced by run_ab_trees.sh and run_bwd_ab.sh.
# A tree extracted by `git archive` carries its commit's mtimes, older than the
# objects a warm machine already has from another tree: ninja would keep those
# stale objects. refresh_tree SRC BUILD touches SRC's build inputs whenever
# their content differs from the content BUILD was last built from.
refresh_tree() {
  local inputs=(src include tools cmake tests CMakeLists.txt) h
  h=$(cd "$1" && find "${inputs[@]}" -type f 2>/dev/null | sort | xargs md5sum | md5sum | cut -c1-32)
  mkdir -p "$2"
  if [[ "$(cat "$2/.flash4-tree" 2>/dev/null)" != "$h" ]]; then
    (cd "$1" && find "${inputs[@]}" -type f -exec touch {} + 2>/dev/null)
    echo "$h" > "$2/.flash4-tree"
  fi
}
