"""Node-side supervision of FUSE mounts: find, unmount and (for CSI) start/adopt servers."""
