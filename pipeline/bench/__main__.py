"""`python -m pipeline.bench`: the throughput bench; `python -m pipeline.bench scale ...`: the scale bench;
`python -m pipeline.bench predict ...`: the zero-shot bench; four probes: `python -m pipeline.bench decoding ...`
(decoders on threads or in processes), `... compiled ...` (the forward eager or compiled), `... hostcost ...`
(where the device path's host time goes) and `... workers ...` (the CPU stage in a run's own workers)."""

import sys

if sys.argv[1:2] == ["scale"]:
    from pipeline.bench.scale import main

    main(sys.argv[2:])
elif sys.argv[1:2] == ["compiled"]:
    from pipeline.bench.compiled import main

    main(sys.argv[2:])
elif sys.argv[1:2] == ["hostcost"]:
    from pipeline.bench.hostcost import main

    main(sys.argv[2:])
elif sys.argv[1:2] == ["decoding"]:
    from pipeline.bench.decoding import main

    main(sys.argv[2:])
elif sys.argv[1:2] == ["workers"]:
    from pipeline.bench.workers import main

    main(sys.argv[2:])
elif sys.argv[1:2] == ["predict"]:
    from pipeline.bench.zeroshot import main

    main(sys.argv[2:])
else:
    from pipeline.bench.throughput import main

    main(sys.argv[1:])
