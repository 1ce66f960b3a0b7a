# Sourced by the launch scripts: ROOT (the repository), PYTHON (.venv's interpreter when .venv exists, so the
# README's commands work right after scripts/setup.sh without activating anything), and -h/--help.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

use_venv_python() {
    if [ -z "${PYTHON:-}" ]; then
        if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
    fi
}

# help_if_asked SCRIPT ARGS...: with -h or --help among ARGS, print SCRIPT's header comment (usage, variables and
# their defaults) and exit 0, before any work.
help_if_asked() {
    local script=$1 arg
    shift
    for arg in "$@"; do
        case "$arg" in
            -h|--help) sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$script"; exit 0 ;;
        esac
    done
}

# all_methods: every method of the registry (ranktuner_verl.methods.METHODS), space-separated: the one list.
all_methods() {
    "$PYTHON" -c 'from ranktuner_verl.methods import METHODS; print(" ".join(METHODS))'
}
