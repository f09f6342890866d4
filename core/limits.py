"""The ranges of the command line's numbers and the default split, in one place, importable without torch."""

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes seeds 0..2^64 - 1
DEFAULT_SPLIT_SEED = 42
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_PARTS = ("train", "dev", "test")

MAX_STEPS = 10_000_000  # about three hours of E01 steps on a laptop CPU; the loss history takes 4 bytes a step
MAX_BATCH_SIZE = 65_536  # the activations of one E02 step stay under about 100 MB
BATCHNORM_MIN_BATCH = 2  # BatchNorm's training statistics (an unbiased variance) need two rows
MAX_LR = 1000.0  # SGD on these nets diverges long before; a larger value is surely a typo
MAX_SAMPLES = 1_000_000  # names per `bnfold sample` call, drawn in chunks of SAMPLE_CHUNK
SAMPLE_CHUNK = 1000  # names drawn per batch; output is written (and a closed pipe noticed) after each
MAX_ROUNDS = 100_000  # interleaved timing rounds (bench, fold --torchvision)
MAX_THREADS = 1024  # torch CPU threads (bench, fold --torchvision)
MAX_IMAGE_SIZE = 4096  # pixels a side of the images fold --torchvision times and bounds on
MAX_INPUT_DIMS = 8  # dims of the example input fold --model and --weights draw (--input-shape)
MAX_INPUT_ELEMENTS = 2**28  # values of that input: 1 GiB of float32
