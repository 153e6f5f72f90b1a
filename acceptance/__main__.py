from acceptance.cli import main

raise SystemExit(main())
