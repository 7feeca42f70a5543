"""Signed offline update bundles (TUF semantics): keys and bundle building on the build station,
verification and atomic application on the appliance."""
