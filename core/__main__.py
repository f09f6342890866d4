from core.app.cli import main

raise SystemExit(main())
