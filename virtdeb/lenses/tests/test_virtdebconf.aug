module Test_virtdebconf =

  let conf = "# my notes
[virtdeb]
allow_edit = qemu.conf bridge.conf

[bridge]
  # the lab bridge
allow=br0
setuid_fallback =
"

  test Virtdebconf.lns get conf =
    { "#comment" = "my notes" }
    { "virtdeb"
      { "allow_edit" = "qemu.conf bridge.conf" }
      { } }
    { "bridge"
      { "#comment" = "the lab bridge" }
      { "allow" = "br0" }
      { "setuid_fallback" } }

  test Virtdebconf.lns put conf after
    set "bridge/allow" "br0 br1" ;
    set "xend/http_server" "yes"
  = "# my notes
[virtdeb]
allow_edit = qemu.conf bridge.conf

[bridge]
  # the lab bridge
allow=br0 br1
setuid_fallback =
[xend]
http_server = yes
"

  test Virtdebconf.lns get "key = value\n" = *
  test Virtdebconf.lns get "[a]\njust words\n" = *
