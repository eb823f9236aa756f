// PosternDirectory
