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

  (* indentation, tabs and trailing blanks, as an administrator writes them *)
  test Bridgeconf.lns get "  allow br0\ndeny\tvirbr9\nallow brü0   \n" =
    { "allow" = "br0" }
    { "deny" = "virbr9" }
    { "allow" = "brü0" }

  test Bridgeconf.lns put "allow br0   \n# end\n" after
    insa "allow" "allow[last()]";
    set "allow[last()]" "br1"
  = "allow br0   \nallow br1\n# end\n"
