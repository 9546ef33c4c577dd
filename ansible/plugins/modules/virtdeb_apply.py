#!/usr/bin/python
# Copyright: virtdeb developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: virtdeb_apply
short_description: Apply virtdeb rules (libvirt's README.Debian) on a Debian host
version_added: "1.0.0"
description:
  - Runs C(virtdeb apply RULE...), which makes the changes libvirt's README.Debian asks
    for, journaled and revertible with C(virtdeb revert).
  - Reads the JSON result of C(virtdeb apply --json) (schema 1). Reports C(changed)
    only when virtdeb made a change; a second run changes nothing.
  - Fails with a clear message on a host where virtdeb is not installed.
  - In check mode runs C(virtdeb apply --dry-run) and writes nothing; in diff mode the
    diff shown is virtdeb's own unified diff of the plan.
options:
  rules:
    description: The rules to apply (xend, debug, network, dnsmasq, bridge, access, qemu, ssh, cpu).
    type: list
    elements: str
    required: true
  root:
    description: Act on the system installed under this directory (C(virtdeb --root)).
    type: path
    default: /
  connect:
    description: libvirt connection URI (default C(qemu:///system)).
    type: str
  settings:
    description:
      - virtdeb.conf values for this run, as C(SECTION.KEY) to value (C(virtdeb --set)).
    type: dict
    default: {}
  executable:
    description: The virtdeb command.
    type: path
    default: /usr/bin/virtdeb
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author:
  - virtdeb developers
"""

EXAMPLES = r"""
- name: Start and autostart the default NAT network, fix the nc alternative
  virtdeb.libvirt_host.virtdeb_apply:
    rules: [network, ssh]

- name: Allow bridge br0 for qemu-bridge-helper
  virtdeb.libvirt_host.virtdeb_apply:
    rules: [bridge]
    settings:
      bridge.allow: br0
"""

RETURN = r"""
changes:
  description: Number of changes virtdeb planned (and, outside check mode, made).
  returned: always
  type: int
journal_id:
  description: The journal entry of the apply (C(virtdeb revert ID) undoes it).
  returned: when changed and not in check mode
  type: str
refused:
  description: Changes virtdeb planned and did not make, each with C(rule), C(target)
    and C(reason).
  returned: always
  type: list
  elements: dict
stdout:
  description: What virtdeb printed, its JSON result (C(virtdeb apply --json)).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.virtdeb.libvirt_host.plugins.module_utils.virtdeb import (
    VirtdebOutputError,
    apply_argv,
    missing,
    parse_result,
    summarise,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            rules=dict(type="list", elements="str", required=True),
            root=dict(type="path", default="/"),
            connect=dict(type="str"),
            settings=dict(type="dict", default={}),
            executable=dict(type="path", default="/usr/bin/virtdeb"),
        ),
        supports_check_mode=True,
    )
    if not module.params["rules"]:
        module.fail_json(msg="rules: name at least one rule")
    absent = missing(module.params["executable"])
    if absent:
        module.fail_json(msg=absent)
    argv = apply_argv(module.params["executable"], module.params, module.check_mode)
    rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C.UTF-8"})
    try:
        summary = summarise(parse_result(out))
    except VirtdebOutputError as exc:
        module.fail_json(msg=err.strip() or str(exc), rc=rc, stdout=out, stderr=err, cmd=argv)
    diff = summary.pop("diff")
    result = dict(summary, stdout=out, stderr=err, cmd=argv, rc=rc)
    if rc != 0 or "error" in summary:
        module.fail_json(msg=summary.get("error") or err.strip() or "virtdeb apply failed",
                         **result)
    if module._diff and summary["changes"]:
        result["diff"] = dict(prepared=diff)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
