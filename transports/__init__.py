"""Verbs transports shipped with rdsx: ``sim`` (in-process IB fabric) and ``tcp`` (soft verbs)."""
