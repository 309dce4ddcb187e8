"""The ``nstzoo`` command-line interface: parses arguments, calls the library, formats results."""
