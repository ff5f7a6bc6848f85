"""Getting the data out: the HTTP/JSON and websocket API (`bookfeed api`), exports and the cold archive."""
