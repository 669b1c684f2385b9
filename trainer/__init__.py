"""trainer"""

import logging

# A library: log records go nowhere until the application (our CLIs) configures logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())
