(*
Module: Virtdebconf
  Parses /etc/virtdeb/virtdeb.conf, virtdeb's own INI file, so that debconf
  answers are written back without losing the administrator's comments.
  Sections hold "key = value" entries; "#" comments and blank lines are kept.
  A new entry is written as "key = value".
*)
module Virtdebconf =
  autoload xfm

  let value  = /[^ \t\r\n]([^\r\n]*[^ \t\r\n])?/
  let entry  = [ Util.del_opt_ws "" . key /[A-Za-z][A-Za-z0-9._-]*/ . del /[ \t]*=/ " ="
               . (del /[ \t]*/ " " . store value)? . Util.eol ]
  let title  = Util.del_str "[" . key /[A-Za-z0-9._-]+/ . Util.del_str "]" . Util.eol
  let record = [ title . (entry | Util.comment | Util.empty)* ]

  let lns = (Util.comment | Util.empty)* . record*

  let filter = incl "/etc/virtdeb/virtdeb.conf"

  let xfm = transform lns filter
