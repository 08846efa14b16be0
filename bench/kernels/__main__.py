import sys

from bench.kernels import main

sys.exit(main(sys.argv[1:]))
