"""``pca crl-sync``: keep relying parties' local CRL files fresh.

Software that checks CRLs from local files (nginx ``ssl_crl``, HAProxy ``crl-file``,
OpenVPN ``crl-verify``) never fetches them. The agent here fetches each configured
CRL (``fetch``), verifies it against a CA bundle and what it installed before
(``verify``), writes the newest good CRL of every URL into one file atomically
(``install``), remembers what it installed (``state``), runs a command when the
file's bytes change and reports each new CRL to the admin API (``agent``,
``report``). ``docs/crl-sync.md`` describes every check.
"""
