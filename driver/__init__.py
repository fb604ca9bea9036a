"""cloudbucket-csi: mount cloud buckets into Kubernetes pods as FUSE filesystems."""

__version__ = "0.1.0"
