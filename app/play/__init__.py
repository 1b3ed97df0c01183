"""The play server: controls -> protocol -> session -> server (+ page, web/) -> recorder; listen runs it."""
