from stn_serve.cli import main

raise SystemExit(main())
