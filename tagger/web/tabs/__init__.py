"""One module per tab of the page; each builds its components and wires its events."""
