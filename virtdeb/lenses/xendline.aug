(*
Module: Xendline
  Parses /etc/xen/xend-config.sxp as a list of single-line (key value) entries.

  Debian's Xendconfsxp lens never loads this file (its filter lacks the path)
  and cannot save changes, so virtdeb ships this one.  Each entry becomes a
  node labelled with its key; an entry without a value, such as
  "(network-script )", becomes a node without a value and is kept as it is.
  Values are stored verbatim (quotes included) and may not contain parentheses.
*)
module Xendline =
  autoload xfm

  let name  = /[A-Za-z0-9_.-]+/
  let value = /[^ \t\n()]([^\n()]*[^ \t\n()])?/

  let entry = [ Util.del_opt_ws "" . Util.del_str "(" . key name
              . (Sep.space . store value)?
              . del /[ \t]*/ "" . Util.del_str ")" . Util.eol ]

  let lns = (Util.empty | Util.comment | entry)*

  let filter = incl "/etc/xen/xend-config.sxp"

  let xfm = transform lns filter
