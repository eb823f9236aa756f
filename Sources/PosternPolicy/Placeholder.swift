// PosternPolicy
