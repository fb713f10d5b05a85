#!/usr/bin/env bash
# The deployment test: boots a throwaway systemd VM (scripts/sysvm.sh), deploys clbagent on it
# with the Ansible role (ansible/playbook.yml; the agent is the Debian package packaging/build-deb.sh
# builds here, since the VM has no network), then verifies the host with pytest-testinfra
# (tests/deploy). The VM is shut down at the end whatever happens. Returns pytest's exit code;
# extra arguments go to pytest.
#
#   scripts/deploy-test.sh                 # everything
#   scripts/deploy-test.sh -k watchdog     # some tests (the VM is still built and deployed)
#
# Ansible runs its modules through Mitogen (one Python process per host that keeps the modules it
# imported) unless CLB_DEPLOY_STRATEGY=linear: under software emulation every plain module start
# costs about ten seconds of Python imports in the VM. The role is the same either way.
#
# Each step is time-bounded (the boot by scripts/sysvm.sh, the playbook by CLB_DEPLOY_PLAY_TIMEOUT,
# 900 s, the tests by CLB_DEPLOY_TEST_TIMEOUT, 2400 s). CLB_DEPLOY_KEEP=1 leaves the VM running.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
run=$(mktemp -d /tmp/clbagent-deploy.XXXXXX)
started=$SECONDS
last=$SECONDS
times=""
# Prints the wall time of the step that just ended, and keeps it for the summary at the end.
phase() {
  [ -z "${step:-}" ] || times+=$(printf '%-40s %5ss' "$step" $((SECONDS - last)))$'\n'
  step=$1
  last=$SECONDS
  echo "deploy-test: $1 ($((SECONDS - started))s so far)" >&2
}

cleanup() {
  phase "shutting down"
  if [ -n "${CLB_DEPLOY_KEEP:-}" ]; then
    echo "deploy-test: VM left running: scripts/sysvm.sh ssh $run CMD; scripts/sysvm.sh stop $run" >&2
  else
    bash scripts/sysvm.sh stop "$run" || true
    rm -rf "$run"
  fi
  phase "done"
  printf 'deploy-test: wall time per step\n%s%-40s %5ss\n' "$times" total $((SECONDS - started)) >&2
}
trap cleanup EXIT
trap 'exit 143' TERM INT

phase "building the agent's package"
bash packaging/build-deb.sh "$run/clbagent.deb" >/dev/null

phase "building or reusing the VM image"
bash scripts/sysvm.sh image >/dev/null
phase "booting the VM"
bash scripts/sysvm.sh start "$run"

cat >"$run/inventory.ini" <<EOF
[gateways]
clbvm ansible_ssh_common_args='-F $run/ssh_config'
EOF
# Paths other than the defaults: the unit must follow the role's configuration.
cat >"$run/vars.yml" <<EOF
clbagent_package: $run/clbagent.deb
# Short, so that the watchdog check does not wait long for a frozen agent.
clbagent_watchdog_sec: 10
clbagent_state_dir: /srv/clbagent/state
clbagent_status_socket: /run/clbagent-status/status.sock
clbagent_documents:
  - $root/tests/deploy/documents/lb-deploy.yaml
  - $root/fixtures/certs/www.example.com.crt
  - $root/fixtures/certs/www.example.com.key
EOF

export ANSIBLE_CONFIG=$root/ansible/ansible.cfg
# Connecting includes starting Python in the VM (Mitogen's bootstrap), which under emulation on a
# busy machine takes far longer than Ansible's default of 10 s.
export ANSIBLE_TIMEOUT=${ANSIBLE_TIMEOUT:-120}
strategy=${CLB_DEPLOY_STRATEGY:-mitogen_linear}
if [ "$strategy" != linear ]; then
  # A copy of the two packages only: the strategy puts its parent directory first on the Python
  # path of the system's Ansible, where the venv's site-packages would shadow Ansible's libraries.
  site=$(.venv/bin/python -c 'import ansible_mitogen, os; print(os.path.dirname(os.path.dirname(ansible_mitogen.__file__)))')
  mkdir -p "$run/mitogen"
  cp -r "$site/ansible_mitogen" "$site/mitogen" "$run/mitogen/"
  export ANSIBLE_STRATEGY_PLUGINS=$run/mitogen/ansible_mitogen/plugins/strategy ANSIBLE_STRATEGY=$strategy
fi

phase "running the playbook ($strategy)"
timeout "${CLB_DEPLOY_PLAY_TIMEOUT:-900}" ansible-playbook -i "$run/inventory.ini" -e "@$run/vars.yml" ansible/playbook.yml </dev/null

phase "verifying with testinfra"
set +e
CLB_DEPLOY_RUN=$run timeout "${CLB_DEPLOY_TEST_TIMEOUT:-2400}" .venv/bin/python -m pytest -v -p no:cacheprovider -rfE \
  --tb=short --durations=0 --durations-min=1 tests/deploy "$@"
rc=$?
set -e
echo "deploy-test: pytest exit $rc" >&2
exit "$rc"
