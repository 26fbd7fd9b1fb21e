from roxy_triage.cli import main

main()
