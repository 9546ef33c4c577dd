(*
Module: Bridgeconf
  Parses /etc/qemu/bridge.conf, the access list of qemu-bridge-helper.

  Each line is "allow NAME", "deny NAME" or "include FILE" (NAME may be
  "all"); blank lines and "#" comments are kept.  Entries become nodes
  labelled with their directive, e.g. { "allow" = "br0" }.  Debian ships no
  lens for this file.
*)
module Bridgeconf =
  autoload xfm

  let word = /[^ \t\n#]+/

  let entry (kw:string) = [ Util.del_opt_ws "" . key kw . Sep.space . store word . Util.eol ]

  let lns = (Util.empty | Util.comment | entry "allow" | entry "deny" | entry "include")*

  let filter = incl "/etc/qemu/bridge.conf"

  let xfm = transform lns filter
