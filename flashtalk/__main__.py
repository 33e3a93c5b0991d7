from flashtalk.cli import main

raise SystemExit(main())
