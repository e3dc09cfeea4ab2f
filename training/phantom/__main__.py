import sys

from ACATData.phantom.build import main

sys.exit(main())
