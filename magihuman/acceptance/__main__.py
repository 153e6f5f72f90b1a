from magihuman.acceptance.cli import main

raise SystemExit(main())
