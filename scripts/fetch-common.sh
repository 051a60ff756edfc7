# Helpers the fetch scripts share (sourced, not run): messages prefixed with $FETCH_NAME, and
# sha256 checks of downloads and outputs.
die() { echo "$FETCH_NAME: error: $*" >&2; exit 1; }
log() { echo "$FETCH_NAME: $*"; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
# True if file $1 exists and its sha256 is $2.
verified() { [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]; }
# Fail unless file $1 has sha256 $2.
check_sha() {
    local got
    got="$(sha256_of "$1")"
    [[ "$got" == "$2" ]] || die "$1: sha256 is $got, expected $2 (corrupt or changed download; delete it and re-run)"
}
