print("milan")
