from chunked_fnet.cli import main

raise SystemExit(main())
