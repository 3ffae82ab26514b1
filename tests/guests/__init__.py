"""Guest programs and host-side helpers shared by the tests that boot whole machines."""
