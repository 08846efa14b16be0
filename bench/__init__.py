"""genbench harness: suites, data, training, sampling, evaluation, results store, reports."""
