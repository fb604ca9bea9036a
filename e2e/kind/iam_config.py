"""Print SeaweedFS's IAM/STS config for `make e2e-kind` (issuer as the first argument)."""

import json
import sys

from e2e.harness import seaweed_iam_config

if __name__ == "__main__":
    print(json.dumps(seaweed_iam_config(sys.argv[1])))
