# Sourced by scripts/run.sh and scripts/cluster.sh: `load_secrets NAME...` exports each secret,
# taken from the environment when set, otherwise generated once into var/secrets.env
# (owner-only) and reused, so a restart keeps conversations verified and web chats connected.
load_secrets() {
  mkdir -p var
  (umask 077; touch var/secrets.env)
  local name value
  for name in "$@"; do
    if [ -z "${!name:-}" ] && ! grep -q "^${name}=" var/secrets.env; then
      printf '%s=%s\n' "$name" "$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(24))')" >> var/secrets.env
    fi
  done
  while IFS='=' read -r name value; do
    [ -n "$name" ] && [ -z "${!name:-}" ] && export "$name=$value"
  done < var/secrets.env
  export "$@"
}
