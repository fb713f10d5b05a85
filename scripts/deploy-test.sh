#!/usr/bin/env bash
# The deployment test: boots a throwaway systemd VM (scripts/sysvm.sh), deploys clbagent on it
# with the Ansible role (ansible/playbook.yml, the agent from a wheelhouse built here, since the
# VM has no network), then verifies the host with pytest-testinfra (tests/deploy). The VM is shut
# down at the end whatever happens. Returns pytest's exit code; extra arguments go to pytest.
#
#   scripts/deploy-test.sh                 # everything
#   scripts/deploy-test.sh -k watchdog     # some tests (the VM is still built and deployed)
#
# Each step is time-bounded (the boot by scripts/sysvm.sh, the playbook by CLB_DEPLOY_PLAY_TIMEOUT,
# 900 s, the tests by CLB_DEPLOY_TEST_TIMEOUT, 1200 s). CLB_DEPLOY_KEEP=1 leaves the VM running.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
run=$(mktemp -d /tmp/clbagent-deploy.XXXXXX)
started=$SECONDS
phase() { echo "deploy-test: $1 ($((SECONDS - started))s so far)" >&2; }

cleanup() {
  if [ -n "${CLB_DEPLOY_KEEP:-}" ]; then
    echo "deploy-test: VM left running: scripts/sysvm.sh ssh $run CMD; scripts/sysvm.sh stop $run" >&2
  else
    bash scripts/sysvm.sh stop "$run" || true
    rm -rf "$run"
  fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# The agent and its dependencies as wheels, built from a copy of the work tree (a build leaves
# build/ and egg-info behind) and packed reproducibly so that an unchanged tree is no change.
phase "building the wheelhouse"
mkdir -p "$run/src" "$run/wheels"
git ls-files -z -co --exclude-standard | xargs -0 tar --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$run/src"
.venv/bin/python -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$run/wheels" "$run/src" pip
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$run/wheelhouse.tar" -C "$run/wheels" .

phase "building or reusing the VM image"
bash scripts/sysvm.sh image >/dev/null
phase "booting the VM"
bash scripts/sysvm.sh start "$run"

cat >"$run/inventory.ini" <<EOF
[gateways]
clbvm ansible_ssh_common_args='-F $run/ssh_config'
EOF
cat >"$run/vars.yml" <<EOF
clbagent_wheelhouse_archive: $run/wheelhouse.tar
clbagent_documents:
  - $root/tests/deploy/documents/lb-deploy.yaml
  - $root/fixtures/certs/www.example.com.crt
  - $root/fixtures/certs/www.example.com.key
EOF

phase "running the playbook"
export ANSIBLE_CONFIG=$root/ansible/ansible.cfg
timeout "${CLB_DEPLOY_PLAY_TIMEOUT:-900}" ansible-playbook -i "$run/inventory.ini" -e "@$run/vars.yml" ansible/playbook.yml

phase "verifying with testinfra"
set +e
CLB_DEPLOY_RUN=$run timeout "${CLB_DEPLOY_TEST_TIMEOUT:-1200}" .venv/bin/python -m pytest -q -p no:cacheprovider -rfE --tb=short tests/deploy "$@"
rc=$?
set -e
phase "done (pytest exit $rc)"
exit "$rc"
