"""The daemon skeleton every virtmesh driver service shares (libvirt's remote_daemon.c idea)."""
