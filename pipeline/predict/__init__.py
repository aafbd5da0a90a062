"""The predict stage: zero-shot scores of every listed clip of a masks run's variants, from rendered files or
composed on the fly, as the `<variant>.csv` files `evaluate` reads (`runner.run_predict`). Nothing is imported
here, so the CLI reads the scorer names without importing torch."""
