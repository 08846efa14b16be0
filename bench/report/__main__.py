from bench.report.build import main

raise SystemExit(main())
