module Test_xendline =

  let conf = "# comment
(xend-unix-server yes)
(network-script )
(total_available_memory 0) 
  (xend-relocation-hosts-allow '^localhost$ ^localhost\\.localdomain$')
#(xend-http-server no)

(vncpasswd '')
"

  test Xendline.lns get conf =
    { "#comment" = "comment" }
    { "xend-unix-server" = "yes" }
    { "network-script" }
    { "total_available_memory" = "0" }
    { "xend-relocation-hosts-allow" = "'^localhost$ ^localhost\\.localdomain$'" }
    { "#comment" = "(xend-http-server no)" }
    { }
    { "vncpasswd" = "''" }

  test Xendline.lns put "(xend-unix-server no)\n" after
    set "xend-unix-server" "yes" ;
    set "xend-address" "localhost"
  = "(xend-unix-server yes)\n(xend-address localhost)\n"

  test Xendline.lns put "(network-script )\n" after
    set "dom0-cpus" "0"
  = "(network-script )\n(dom0-cpus 0)\n"

  test Xendline.lns get "(a (b c))\n" = *
