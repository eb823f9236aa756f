// PosternSpool
