"""Chat-export parsing and the pure stages that turn messages into persona pairs."""
