module Test_bridgeconf =

  let conf = "# qemu-bridge-helper ACL
allow br0
deny virbr9
include /etc/qemu/site.conf

allow all
"

  test Bridgeconf.lns get conf =
    { "#comment" = "qemu-bridge-helper ACL" }
    { "allow" = "br0" }
    { "deny" = "virbr9" }
    { "include" = "/etc/qemu/site.conf" }
    { }
    { "allow" = "all" }

  test Bridgeconf.lns put "allow br0\n" after
    set "allow[last()+1]" "br1"
  = "allow br0\nallow br1\n"

  test Bridgeconf.lns get "allow br0 br1\n" = *
  test Bridgeconf.lns get "permit br0\n" = *
